"""Parallelism: mesh, logical axis rules and shardings; multi-process start-up and peer loss."""
