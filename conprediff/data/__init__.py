"""Datasets: the embedded digits, MNIST-5k (optional extra), colour photo crops and folders of
images."""

from .digits import load_digits_images, load_mnist_images
from .folder import IMAGE_SUFFIXES, ImageFolder
from .images import read_image
from .photos import PHOTOS, load_photo_crops

__all__ = [
    "IMAGE_SUFFIXES",
    "PHOTOS",
    "ImageFolder",
    "load_digits_images",
    "load_mnist_images",
    "load_photo_crops",
    "read_image",
]
