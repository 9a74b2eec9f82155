"""Replaced backward rules per layer type: the one mechanism under LRP, guided backprop, deconvnet and the
steps of feature visualisation.

The model's graph is walked as usual (:mod:`cnn_exposed.graph`), with every layer swapped for a version
whose forward pass is the layer's own and whose backward pass follows a rule. In LRP mode what flows
backward is the relevance itself: the engine seeds the explained logit with its own value, and each rule
maps the relevance of a layer's output to that of its inputs. (Carrying relevance rather than a modified
gradient ``g`` with ``R = a ⊙ g`` saves the element-wise passes that would turn one into the other at every
activation, which on a CPU cost as much as the convolutions.)

- Linear layers with weights (Dense, Conv1D/2D/3D, DepthwiseConv2D), batch normalisation folded in:
  ε, z⁺ / αβ, or z^B (first layer) rules.
- Weight-free linear operations (Add, average pooling, standalone batch normalisation, Rescaling): the
  ε-rule, which splits relevance in proportion to each input's contribution (residual ``Add``).
- Element-wise activations: relevance passes unchanged (``R_z = R_a``; for ReLU this is the plain gradient).
- Routing layers (padding, reshaping, max pooling, dropout, concatenation): the plain gradient.

Guided backprop and deconvnet change only the ReLU family's backward pass; the ``"gradient"`` mode
changes none (feature visualisation uses it for the faster linear layers).

Split the way zennit splits its core: :mod:`.kinds` (what each node is), :mod:`.rewrite` (graph rewriting,
zennit's canonizers), :mod:`.lrp` (the LRP rules), :mod:`.relu` (the ReLU modes) and :mod:`.ruleset` (the
rule sets that compose them, zennit's composites). Attribution (LRP, guided backprop, deconvnet) and
feature visualisation both build on it; it depends on neither.
"""

from __future__ import annotations

from .lrp import LRP_RULES
from .ruleset import DEFAULT_COMPOSITE, GRADIENT_RULES, RuleSet

__all__ = ["DEFAULT_COMPOSITE", "GRADIENT_RULES", "LRP_RULES", "RuleSet"]
