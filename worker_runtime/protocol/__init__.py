"""Bazel's persistent worker protocol: message types, wire framing and @argfile expansion.

This package only turns messages into bytes and back; it never starts processes or
serves anything.
"""
