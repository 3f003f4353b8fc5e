"""Task heads that sit on the shared FPN."""
