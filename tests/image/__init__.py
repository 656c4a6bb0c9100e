"""Tests of unionfs.image."""
