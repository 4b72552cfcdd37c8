"""Equi-normalization (Stock et al. 2019) for any torch.fx-traceable ReLU network.

A hidden unit (a neuron, or a conv channel) can be rescaled by d > 0 without changing
the function: its incoming weights and bias x d, its outgoing weights x 1/d, because
relu(d x) = d relu(x). `ENorm` picks every d to minimise the (c-weighted) squared L2
norm of the weights, by block coordinate descent, one cycle per optimizer step.

How the graph is read (`find_unit_groups`, on a torch.fx trace; `channels` follows every
channel through the graph, `ops` says which ops a per-channel scale passes, `units` makes
units and groups of the channels):

- Producers: a Conv/Linear's weight rows and bias entries create the units of its
  output channels (with ``bn="fold"``, an affine BatchNorm/GroupNorm's gamma and beta
  do, and the layer before it is not rescaled: function-preserving; with
  ``bn="ignore"`` BatchNorm layers are transparent and their parameters left alone,
  the paper's ENorm + BN, which changes the function by design, while a GroupNorm,
  which pools statistics across channels and so does not cancel a per-channel scale,
  stops the channels feeding it).
- Consumers: a Conv/Linear's input columns (after a flatten, the block of columns of
  each channel) carry the units' outgoing weights.
- Between the two, only ops that commute with a positive per-channel scale: ReLU,
  LeakyReLU, max/avg/adaptive pooling, dropout, identity, flatten, multiplication by
  a constant, a mean over spatial dims, and
  - concatenation along channels: every channel keeps its own producer, and a
    consumer of the concatenation has its columns split among those producers;
  - addition: the summands are *tied*, one factor per channel for all of them
    (union-find); a tied unit's l and r add up (sum of squares) over all its
    producers and all its consumers. With identity shortcuts a whole ResNet stage
    (stem or projection, every block's last conv, every block's first conv) is one
    group of tied units.
- Anything else stops a unit, which is then not balanced: GELU, softmax, LayerNorm,
  sigmoid, an addition with an untracked tensor, the model output, any unknown op.
- ``attention=True`` also balances, inside attention modules with separate q/k/v/proj
  linears, q against k per head dimension and v against proj (q k^T and (A V) W_o
  are unchanged); each such module is first checked numerically.

Units updated together form a `UnitGroup` (no weight is shared by two of its units);
`ENorm.describe()` lists them. `cycle` runs one balancing cycle over the groups (in
waves, with deterministic ops only), `balance` holds `ENorm`, which interleaves it with
the optimizer, and `cudagraph` replays it as one CUDA graph.
"""

from .balance import STATE_POWERS, ENorm
from .channels import BN_MODES
from .cycle import ORDERS, Cycle, Wave, balance_cycle, levels, unit_factors, unit_norms, waves
from .units import UnitAnalysis, UnitGroup, UnitSlice, describe_groups, find_unit_groups

__all__ = ["ENorm", "STATE_POWERS", "BN_MODES", "ORDERS", "Cycle", "Wave", "balance_cycle", "levels",
           "waves", "unit_factors", "unit_norms", "UnitAnalysis", "UnitGroup", "UnitSlice",
           "find_unit_groups", "describe_groups"]
