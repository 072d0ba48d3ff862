"""Networks: what segmentation_models_pytorch lacks, and the input normalisation every network gets.

In: uint8 NHWC batches from ``carvana.data``. Out: logits (N, 1, H, W). smp's own architectures are built
straight from ``conf/model/*.yaml``; here are the from-scratch U-Nets of the 1st and 3rd places and
``NetworkInput``, which turns the uint8 batches into the network's float input on their device.
"""

from carvana.models.dilated_unet import DilatedUNet
from carvana.models.network_input import NetworkInput
from carvana.models.unet import UNet

__all__ = ["DilatedUNet", "NetworkInput", "UNet"]
