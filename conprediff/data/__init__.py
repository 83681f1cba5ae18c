"""Datasets: the embedded digits, MNIST-5k (optional extra), captioned digits, colour photo
crops and folders of images (with captions)."""

from .captioned import CaptionedDigits, load_captioned_digits, measure_digit_attributes
from .digits import load_digits_images, load_mnist_images
from .folder import IMAGE_SUFFIXES, ImageFolder
from .images import read_image
from .photos import PHOTOS, load_photo_crops

__all__ = [
    "IMAGE_SUFFIXES",
    "PHOTOS",
    "CaptionedDigits",
    "ImageFolder",
    "load_captioned_digits",
    "load_digits_images",
    "load_mnist_images",
    "load_photo_crops",
    "measure_digit_attributes",
    "read_image",
]
