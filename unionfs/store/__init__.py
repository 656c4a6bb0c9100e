"""The embedded image and container store: blobs, layers, images, containers."""
