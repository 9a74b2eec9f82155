"""The rule sets: which rule every layer and operation of a model gets, composed from the kinds
(:mod:`.kinds`), the graph rewriting (:mod:`.rewrite`), the LRP rules (:mod:`.lrp`) and the ReLU modes
(:mod:`.relu`)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ..errors import UnsupportedLayerError
from ..layers import is_subclassed, iter_layers, trace_subclassed
from ..model_io import branch_operations, input_index, on_branch
from .deeplift import (
    inputs_rows_only,
    max_split_backward,
    max_split_rule,
    product_backward,
    product_rule,
    rescale,
    rescale_layer,
)
from .deeplift import layer_norm_rule as deeplift_layer_norm_rule
from .kinds import (
    OP_RELU,
    activation_fn,
    activation_name,
    input_non_negative,
    is_linear_activation,
    layer_kind,
    operation_kind,
    operations_before,
    operations_in,
    signal_input,
)
from .lrp import (
    LRP_RULES,
    epsilon_backward,
    gate_backward,
    gate_rule,
    layer_norm_rule,
    operation_rule,
    pass_through_rule,
    passes,
    plain_linear_rule,
    weighted_rule,
)
from .relu import activation_rule
from .rewrite import chain_maps, fold_pairs, linear_map, pad_pairs, stages

DEFAULT_COMPOSITE = {"first": "zb", "conv": "zplus", "dense": "epsilon"}
MODES = ("lrp", "deeplift", "guided", "deconv", "redirect", "gradient")


class RuleSet:
    """Which backward rule each layer of a model gets.

    Parameters
    ----------
    mode : {"lrp", "deeplift", "guided", "deconv", "redirect", "gradient"}
        ``"deeplift"``: DeepLIFT's multipliers (:mod:`.deeplift`), for a batch of inputs stacked on their
        references (:meth:`cnn_exposed.engine.Engine.multipliers`). ``"redirect"``: Lucid's redirected ReLU
        gradient, for feature visualisation. ``"gradient"``: the plain gradient, computed faster than the model's
        own backward pass (below).
    rule : str or dict
        LRP only: one rule for every weighted layer, or a composite ``{"first": ..., "conv": ...,
        "dense": ...}`` (missing entries: ``"epsilon"``).
    epsilon : float
        The ε of the ε-rule.
    bounds : (low, high) or None
        The z^B rule's input bounds; None uses each image's own minimum and maximum.
    shortcuts : bool
        Take the shortcuts that give the same result faster: a ``ZeroPadding2D`` done inside the convolution
        after it, and z⁺ / αβ sums over the positive inputs only where a layer's input is known to be >= 0.
        False computes the general formulas (what the tests check the shortcuts against).
    """

    def __init__(
        self, mode: str, rule="composite", epsilon: float = 1e-2, bounds=None, *, shortcuts: bool = True
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if rule == "composite":
            rule = dict(DEFAULT_COMPOSITE)
        composite = dict(rule) if isinstance(rule, dict) else {"first": rule, "conv": rule, "dense": rule}
        for key, value in composite.items():
            if key not in ("first", "conv", "dense"):
                raise ValueError(f"Composite keys are 'first', 'conv' and 'dense'; got {key!r}.")
            if value not in LRP_RULES:
                raise ValueError(f"Unknown LRP rule {value!r}; choose from {LRP_RULES}.")
        for key in ("first", "conv", "dense"):
            composite.setdefault(key, "epsilon")
        if "zb" in (composite["conv"], composite["dense"]):
            raise ValueError("The z^B rule is for the first layer only: use it as the composite's 'first' entry.")
        self.mode, self.composite, self.epsilon, self.bounds = mode, composite, float(epsilon), bounds
        self.shortcuts = bool(shortcuts)
        self.output = "relevance" if mode == "lrp" else "gradient"
        bkey = None if bounds is None else tuple(np.asarray(bounds, dtype=np.float64).ravel().tolist())
        lrp_key = tuple(sorted(composite.items())) if mode == "lrp" else None
        self.key = (mode, lrp_key, self.epsilon, bkey, self.shortcuts)

    def _bounds(self, x):
        if self.bounds is None:
            axes = tuple(range(1, len(x.shape)))
            shape = (-1,) + (1,) * (len(x.shape) - 1)
            low = ops.reshape(ops.min(x, axis=axes), shape) * ops.ones_like(x)
            high = ops.reshape(ops.max(x, axis=axes), shape) * ops.ones_like(x)
            return ops.stop_gradient(low), ops.stop_gradient(high)
        low, high = (np.asarray(b, dtype=np.float32) for b in self.bounds)
        return ops.ones_like(x) * low, ops.ones_like(x) * high

    def replacements(self, model, head, keep=(), input=None) -> dict:
        """``id(layer) -> factory(layer, final)`` for every layer (nested ones included) that needs one.

        In every mode, a batch normalisation that follows a linear layer is folded into that layer's kernel
        and bias (one pass instead of two, forward and backward), and stride-1 convolutions are
        differentiated through a transposed forward convolution (:func:`transposed_conv`). ``keep``: layers
        (or :class:`LayerRef`) whose own output is read, so that no batch normalisation is folded into them
        (LRP folds regardless: the relevance at a convolution and at its normalisation is the same). ``input``: the
        explained input of a model with several (a name or an index): the composite's "first" layer is the first
        weighted layer that input reaches.
        """
        subclassed = [m for m in [model] + [r.layer for r in iter_layers(model)] if is_subclassed(m)]
        if subclassed and self.mode in ("gradient", "redirect"):
            return {}  # the model's own gradient (feature visualisation of a subclassed model)
        for m in subclassed:  # walked through their functional twins (run_model)
            trace_subclassed(m)
        # A model with several inputs: only the explained input's branch is differentiated; the other inputs'
        # branches run as they are (the relevance flowing into them is dropped), whatever their layers.
        branch = branch_operations(model, input_index(model, input))  # None: a single input reaches everything
        refs = [r for r in iter_layers(model, graph_order=True) if on_branch(r, branch)]
        operations = [r for r in operations_in(model) if on_branch(r, branch)]
        if self.mode == "lrp":
            _refuse_nodes_without_rule(refs, operations)
        kept = {id(getattr(k, "layer", k)) for k in keep} if self.mode != "lrp" else set()
        folds = {k: bn for k, bn in fold_pairs(model).items() if k not in kept}
        folded_bns = {id(bn) for bn in folds.values()}
        weighted = [r for r in refs if layer_kind(r.layer) == "weighted"]
        first_id = id(weighted[0].layer) if weighted else None  # the composite's "first" entry applies here
        # z^B keeps its padding layer: its bounds cover the padded border too
        zb_first = self.mode == "lrp" and self.composite["first"] == "zb"
        pads = {
            k: pad
            for k, pad in (pad_pairs(model) if self.shortcuts else {}).items()
            if id(pad) not in kept and not (zb_first and k == first_id)
        }
        padding_layers = {id(pad) for pad in pads.values()}
        zb_bounds = self._bounds
        if zb_first and weighted:
            first = weighted[0]
            before = refs[: refs.index(first)]
            odd = next((r for r in before if layer_kind(r.layer) not in ("routing", "model", "elementwise")), None)
            if odd is not None:
                raise UnsupportedLayerError(
                    f"The z^B rule needs the first weighted layer ({first.path!r}) to see the model input, "
                    f"but {odd.path!r} ({type(odd.layer).__name__}) transforms it first. Use "
                    "rule={'first': 'zplus', ...} or 'epsilon' for the first layer."
                )
            # keras.ops between the input and the first layer (x / 255.0 in a call()): element-wise only
            upstream = operations_before(first.layer)
            odd = next((op for op in upstream if operation_kind(op) not in ("elementwise", "routing")), None)
            if odd is not None:
                raise UnsupportedLayerError(
                    f"The z^B rule needs the first weighted layer ({first.path!r}) to see the model input, "
                    f"but the keras.ops operation {odd.name!r} ({type(odd).__name__}) transforms it first. Use "
                    "rule={'first': 'zplus', ...} or 'epsilon' for the first layer."
                )
            # A model that scales or normalises its own input: the bounds are mapped through that scaling.
            scaling = [r.layer for r in before if layer_kind(r.layer) == "elementwise"]
            zb_bounds = self._bounds_after(
                scaling + [op for op in upstream if operation_kind(op) == "elementwise"], first.layer
            )
        out = {}
        for r in refs:
            layer, kind = r.layer, layer_kind(r.layer)
            if kind == "weighted":
                pad = pads.get(id(layer))
                factory = self._weighted_factory(layer, folds.get(id(layer)), id(layer) == first_id, pad, zb_bounds)
                out[id(layer)] = factory
            elif kind == "activation" and self.mode != "gradient":
                out[id(layer)] = self._activation_factory(layer)
            elif id(layer) in folded_bns or id(layer) in padding_layers:
                out[id(layer)] = lambda op, final: lambda x, *a, **k: x
            elif self.mode == "deeplift":
                if (factory := deeplift_layer_factory(layer, kind)) is not None:
                    out[id(layer)] = factory
            elif self.mode != "lrp":
                continue  # below: LRP's rules; the other modes take these layers' own gradient
            elif kind == "linear":
                out[id(layer)] = lambda op, final: plain_linear_rule(op, self.epsilon)
            elif kind == "elementwise":
                out[id(layer)] = lambda op, final: pass_through_rule(op)
            elif kind == "gate":
                signal = signal_input(r)  # decided now, so an ambiguous product fails before any tracing
                out[id(layer)] = lambda op, final, signal=signal: gate_rule(op, signal)
            elif kind == "layernorm":
                out[id(layer)] = lambda op, final: layer_norm_rule(op, self.epsilon)
        for r in operations:
            factory = self._operation_factory(r)
            if factory is not None:
                out[id(r.layer)] = factory
        return out

    def _operation_factory(self, ref):
        """The rule of a ``keras.ops`` operation between layers, or None for its own gradient."""
        name, kind = type(ref.layer).__name__, operation_kind(ref.layer)
        if self.mode == "deeplift":
            return deeplift_operation_factory(ref.layer)
        if self.mode != "lrp":
            if name not in OP_RELU or self.mode == "gradient":
                return None  # guided backprop, deconvnet and redirection change only the ReLU family
            return lambda op, final: operation_rule(
                op, wrap=lambda forward: activation_rule(forward, self.mode, OP_RELU[name])
            )
        if kind == "elementwise":
            if name in ("Softmax", "Sigmoid"):  # the model's last operation: the logit is explained
                return lambda op, final: (lambda x, *a, **k: x) if final else operation_rule(op, passes)
            return lambda op, final: operation_rule(op, passes)
        if kind == "linear":
            return lambda op, final: operation_rule(op, lambda forward: epsilon_backward(forward, self.epsilon))
        if kind == "gate":
            signal = signal_input(ref)
            return lambda op, final: operation_rule(op, lambda forward: gate_backward(signal))
        return None  # routing

    def _bounds_after(self, layers: list, first):
        """The z^B bounds for the first weighted layer when ``layers`` (per-element affine maps such as
        ``Rescaling`` and ``Normalization``) come between it and the model input.

        Without given bounds, each image's own minimum and maximum are read at the first layer's input, which
        already includes the scaling. Given bounds are in model-input units: mapped through ``x -> a x + b``
        (``a`` and ``b`` measured by running the layers on zeros and ones), low and high swapped where ``a < 0``.
        """
        if self.bounds is None or not layers:
            return self._bounds
        channels = int(first.input.shape[-1])
        zeros, ones = np.zeros((1, 1, 1, channels), np.float32), np.ones((1, 1, 1, channels), np.float32)
        for layer in layers:
            if type(layer).__name__ not in ("Rescaling", "Normalization"):  # a keras.ops operation too
                raise UnsupportedLayerError(
                    f"The z^B rule with given bounds cannot map them through {layer.name!r} "
                    f"({type(layer).__name__}); leave bounds=None (each image's own range)."
                )
            zeros, ones = np.asarray(layer(zeros)), np.asarray(layer(ones))
        a, b = (ones - zeros).reshape(-1), zeros.reshape(-1)
        low, high = (np.asarray(v, np.float32) for v in self.bounds)
        mapped_low, mapped_high = a * low + b, a * high + b
        low, high = np.minimum(mapped_low, mapped_high), np.maximum(mapped_low, mapped_high)

        def bounds(x):
            return ops.ones_like(x) * low, ops.ones_like(x) * high

        return bounds

    def _weighted_factory(self, layer, bn, is_first: bool, pad, bounds=None):
        bounds = bounds or self._bounds
        kind = "dense" if isinstance(layer, keras.layers.Dense) else "conv"
        rule = self.composite["first"] if is_first else self.composite[kind]
        pads = None if pad is None else tuple(tuple(int(p) for p in side) for side in pad.padding)

        def factory(op, final: bool):
            maps = []
            for i, (stage, kernel, bias) in enumerate(stages(op, bn)):
                if self.mode == "lrp":  # later stages of a separable convolution: the conv rule, signed input
                    first = i == 0
                    maps.append(
                        weighted_rule(
                            stage,
                            rule if first else self.composite["conv"],
                            self.epsilon,
                            kernel,
                            bias,
                            bounds if first else None,
                            first and self.shortcuts and input_non_negative(op),
                            pads if first else None,
                        )  # fmt: skip
                    )
                else:
                    linear = linear_map(stage, kernel, bias, pads if i == 0 else None)
                    maps.append(inputs_rows_only(linear) if self.mode == "deeplift" else linear)
            linear = maps[0] if len(maps) == 1 else chain_maps(maps)
            act = None if final or is_linear_activation(op.activation) else op.activation
            if act is None:
                return lambda x, *a, **k: linear(x)
            act_fn = activation_rule(act, self.mode, activation_name(op))
            return lambda x, *a, **k: act_fn(linear(x))

        return factory

    def _activation_factory(self, layer):
        def factory(op, final: bool):
            name = activation_name(op)
            if final and name in ("softmax", "sigmoid"):
                return lambda x, *a, **k: x
            return activation_rule(activation_fn(op), self.mode, name)

        return factory


def deeplift_layer_factory(layer, kind: str):
    """DeepLIFT's rule for a layer that is neither weighted nor an activation (those are the composite's), or
    None for its plain gradient: linear maps (pooling by averages, sums, concatenation, padding, reshaping,
    dropout, standalone batch normalisation, ``Rescaling``, ``Normalization``, layer scale), and what has no rule
    (softmax inside the network, unknown layers: summation to delta is then not exact)."""
    name = type(layer).__name__
    if kind == "routing" and "MaxPooling" in name:
        return lambda op, final: max_split_rule(op)
    if kind == "elementwise" and name == "PReLU":
        return lambda op, final: rescale_layer(op)
    if kind == "gate":
        return lambda op, final: product_rule(op)
    if kind == "layernorm":
        return lambda op, final: deeplift_layer_norm_rule(op)
    return None


# keras.ops operations with one tensor input that are linear in it (the gradient is their multiplier)
OP_LINEAR = {"Add", "Subtract", "Multiply", "Negative", "Cast", "Identity"}


def deeplift_operation_factory(op):
    """DeepLIFT's rule for a ``keras.ops`` operation between layers, or None for its gradient: Rescale for the
    element-wise ones (``x / c`` too, exact either way; softmax is not element-wise), the Shapley split for a
    product of tensors, captum's split for ``ops.max``; sums and routing are linear."""
    name, kind = type(op).__name__, operation_kind(op)
    if kind == "elementwise" and name not in OP_LINEAR and name not in ("Softmax", "LogSoftmax"):
        # the model's last operation (a sigmoid): the logit is explained
        return lambda node, final: (lambda x, *a, **k: x) if final else operation_rule(node, wrap=rescale)
    if kind == "gate":
        return lambda node, final: operation_rule(node, product_backward)
    if name == "Max":
        return lambda node, final: operation_rule(node, max_split_backward)
    return None


GRADIENT_RULES = RuleSet("gradient")
"""The fast layer plan with the plain gradient: what every engine that needs no other rules runs on (the
gradient methods, the CAMs, the audit's passes, TCAV), shared so that they share cached engines."""


def _refuse_nodes_without_rule(refs: list, operations: list) -> None:
    """Raise for the first layer, else the first ``keras.ops`` operation, that LRP has no rule for."""
    layer = next((r for r in refs if layer_kind(r.layer) == "unsupported"), None)
    if layer is not None:
        raise UnsupportedLayerError(
            f"LRP cannot propagate relevance through layer {layer.path!r} of type {type(layer.layer).__name__}. "
            "Supported: Dense, Conv1D/2D/3D, DepthwiseConv2D, SeparableConv2D, BatchNormalization, "
            "LayerNormalization, pooling, Add, Concatenate, Multiply gates, padding, reshaping, dropout, "
            "augmentation layers, Rescaling / Normalization and element-wise activations. Wrap a custom "
            "layer's computation in these, or explain it with a gradient method (saliency, "
            "integrated_gradients, gradcam)."
        )
    op = next((r for r in operations if operation_kind(r.layer) == "unsupported"), None)
    if op is not None:
        raise UnsupportedLayerError(
            f"LRP has no rule for the keras.ops operation {op.path!r} ({type(op.layer).__name__}) that the "
            "model applies between its layers. Supported between layers: element-wise activations and "
            "arithmetic with constants, sums of tensors (x + y, ops.mean), products that gate a signal, "
            "and reshaping, slicing or joining. Write it as a layer of those kinds, or explain the model "
            "with a gradient method (saliency, integrated_gradients, gradcam)."
        )
