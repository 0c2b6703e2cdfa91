"""adam_optax: Adam (Kingma & Ba, 2015) from small, pure, composable optax pieces."""

from adam_optax.averaging import AveragedParamsState, average_params, averaged_params
from adam_optax.bias import bias_correct
from adam_optax.diagnosis import diagnostics
from adam_optax.flat import FlatParams, Layout, flat_train_step, flatten_params, update_and_apply
from adam_optax.lr import ScaleByLrState, scale_by_lr
from adam_optax.moments import Moments, MomentsState, scale_by_infinity_moments, scale_by_moments
from adam_optax.normalize import NormalizeState, normalize
from adam_optax.optimizers import adam, adamax, adamw, amsgrad, nadam, nadamw
from adam_optax.quantized import Quantized, dequantize
from adam_optax.running_max import RunningMaxState, running_max
from adam_optax.sharding import zero1_shardings

__version__ = "0.1.0"

__all__ = [
  "AveragedParamsState",
  "FlatParams",
  "Layout",
  "Moments",
  "MomentsState",
  "NormalizeState",
  "Quantized",
  "RunningMaxState",
  "ScaleByLrState",
  "adam",
  "adamax",
  "adamw",
  "amsgrad",
  "average_params",
  "averaged_params",
  "bias_correct",
  "dequantize",
  "diagnostics",
  "flat_train_step",
  "flatten_params",
  "nadam",
  "nadamw",
  "normalize",
  "running_max",
  "scale_by_infinity_moments",
  "scale_by_lr",
  "scale_by_moments",
  "update_and_apply",
  "zero1_shardings",
]
