"""Datasets: the embedded digits, MNIST-5k (optional extra) and folders of images."""

from .digits import load_digits_images, load_mnist_images
from .folder import IMAGE_SUFFIXES, ImageFolder
from .images import read_image

__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "load_digits_images", "load_mnist_images", "read_image"]
