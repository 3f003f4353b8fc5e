"""Fusion methods: pure functions from instances + semantic logits to a `PanopticResult`."""
