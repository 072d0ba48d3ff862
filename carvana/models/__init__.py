"""Networks segmentation_models_pytorch lacks; everything else is built from smp directly in conf/model/."""

from carvana.models.dilated_unet import DilatedUNet
from carvana.models.unet import UNet

__all__ = ["DilatedUNet", "UNet"]
