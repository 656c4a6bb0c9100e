"""Tests of unionfs.store."""
