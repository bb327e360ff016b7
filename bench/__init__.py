"""Benchmarks for the checkout function (not tests): `make bench`, see README "Performance"."""
