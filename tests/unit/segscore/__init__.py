"""Tests of the segscore tools."""
