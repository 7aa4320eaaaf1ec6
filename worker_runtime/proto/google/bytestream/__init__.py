"""Generated modules for google.bytestream: the ByteStream service for large blobs."""
