"""Networks list their backbones explicitly: ``{state-dict prefix: Backbone}``.

Why: code that needs a network's backbones (the layout version a run records,
:mod:`medmtl.networks.layouts`; the spatial sizes an export accepts, :mod:`medmtl.deploy.export`)
asks the network instead of walking its modules, so a backbone nested in a head, a copy kept for
another purpose or a wrapper that renames its state dict (:class:`~medmtl.networks.zoo.ZooNetwork`)
cannot be counted wrongly or missed. Every medmtl network and wrapper implements
:meth:`HoldsBackbones.backbones`; :func:`network_backbones` is the one way to ask.
"""

from __future__ import annotations

from torch import nn

from medmtl.networks.backbones import Backbone

__all__ = ["HoldsBackbones", "holds_backbones", "network_backbones", "prefixed_backbones"]


class HoldsBackbones:
    """Mixin of networks that hold medmtl backbones (it defines no ``__init__``)."""

    def backbones(self) -> dict[str, Backbone]:
        """``{state-dict prefix: backbone}`` of every backbone the network runs, e.g. ``{"backbone": ...}``.

        The prefix is what the backbone's keys start with in the network's ``state_dict()``
        (``"columns.0"``, ``"members.1.backbone"``), so checkpoint keys can be matched to it. Every medmtl
        network overrides it; a user's own subclass that does not lists none, as before this method
        existed: no backbone layout is recorded for it, an export keeps its training size, and encoder
        options (pretrained weights, freezing) find no encoder.
        """
        return {}


def holds_backbones(network: nn.Module) -> bool:
    """Whether ``network`` is a medmtl backbone or lists its backbones (else a torch / MONAI / custom module)."""
    return isinstance(network, (Backbone, HoldsBackbones))


def network_backbones(network: nn.Module) -> dict[str, Backbone]:
    """``{state-dict prefix: backbone}`` of ``network`` (``{"": network}`` for a backbone itself).

    Raises:
        TypeError: ``network`` is neither a medmtl backbone nor a network that lists its backbones
            (e.g. a plain MONAI network); callers that accept those check :func:`holds_backbones` first.
    """
    if isinstance(network, Backbone):
        return {"": network}
    if isinstance(network, HoldsBackbones):
        return network.backbones()
    raise TypeError(
        f"{type(network).__name__} is not a medmtl network: it does not list its backbones. Use a medmtl network "
        "(MultiTaskNet, CrossStitchNet, MultiPlaneNet, ...), or subclass medmtl.networks.HoldsBackbones and "
        "implement backbones()"
    )


def prefixed_backbones(prefix: str, network: nn.Module) -> dict[str, Backbone]:
    """The backbones of ``network`` held under ``prefix`` by a wrapper (``"members.0"`` -> ``"members.0.backbone"``).

    A wrapped module that is not a medmtl network (a custom router or expert of an
    :class:`~medmtl.networks.ExpertRouter`, which only has to return ``{task: logits}``) holds no
    backbone medmtl knows: it adds none.
    """
    if not holds_backbones(network):
        return {}
    return {".".join(p for p in (prefix, name) if p): b for name, b in network_backbones(network).items()}
