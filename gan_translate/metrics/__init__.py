"""Evaluation metrics for image-to-image translation (L1, PSNR, SSIM, LPIPS, FID, KID), strictly offline."""

from .features import (
    FID_WEIGHTS_ENV,
    InceptionFeatureExtractor,
    MissingWeightsError,
    TinyFeatureExtractor,
    build_fid_feature_extractor,
    resolve_fid_weights,
)
from .folders import evaluate_folders, load_image
from .lpips import LPIPS_WEIGHTS_ENV, OfflineLPIPS, build_lpips_network, resolve_lpips_backbone
from .translation import TranslationMetrics, build_metrics

__all__ = [
    "FID_WEIGHTS_ENV",
    "LPIPS_WEIGHTS_ENV",
    "InceptionFeatureExtractor",
    "MissingWeightsError",
    "OfflineLPIPS",
    "TinyFeatureExtractor",
    "TranslationMetrics",
    "build_fid_feature_extractor",
    "build_lpips_network",
    "build_metrics",
    "evaluate_folders",
    "load_image",
    "resolve_fid_weights",
    "resolve_lpips_backbone",
]
