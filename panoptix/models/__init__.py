"""Models: backbones, necks, heads and the systems composed from them."""
