"""The public names of adam_optax: for type checkers, and the list ``__init__.py`` loads lazily."""

from .averaging import AveragedParamsState as AveragedParamsState
from .averaging import average_params as average_params
from .averaging import averaged_params as averaged_params
from .bias import bias_correct as bias_correct
from .conversion import convert_state as convert_state
from .diagnosis import diagnostics as diagnostics
from .flat import FlatParams as FlatParams
from .flat import Layout as Layout
from .flat import flat_train_step as flat_train_step
from .flat import flatten_params as flatten_params
from .flat import update_and_apply as update_and_apply
from .lr import ScaleByLrState as ScaleByLrState
from .lr import scale_by_lr as scale_by_lr
from .moments import Moments as Moments
from .moments import MomentsState as MomentsState
from .moments import scale_by_infinity_moments as scale_by_infinity_moments
from .moments import scale_by_moments as scale_by_moments
from .normalize import NormalizeState as NormalizeState
from .normalize import normalize as normalize
from .optimizers import adam as adam
from .optimizers import adamax as adamax
from .optimizers import adamw as adamw
from .optimizers import amsgrad as amsgrad
from .optimizers import nadam as nadam
from .optimizers import nadamw as nadamw
from .quantized import Quantized as Quantized
from .quantized import dequantize as dequantize
from .running_max import RunningMaxState as RunningMaxState
from .running_max import running_max as running_max
from .sharding import zero1_shardings as zero1_shardings

__version__: str
