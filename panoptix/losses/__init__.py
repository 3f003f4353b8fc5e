"""Losses shared by systems (CIAE's embedding loss, ...)."""
