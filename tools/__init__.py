"""Helpers beside the product: the handwritten-digits image folder the demo and the tests train on, and the
GPU host's wheel packing (device_wheels.sh)."""
