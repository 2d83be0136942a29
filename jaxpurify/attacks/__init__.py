"""Attacks on deployed weights, to test purification and the seal against: backdoors, sparse and
channel trojans, bit flips, and the adaptive attacker who stays inside each leaf's column span.

Every attack is ``attack(key, apply_fn, params, data, *, target, trigger, **hyper) -> Attack``
with ``apply_fn(params, x) -> logits`` and ``data = (x, y)`` the attacker's data; hyper-parameters
have fixed defaults and are all recorded in ``Attack.hyper``; the sparse, channel and span trojans
take their training as one :class:`Finetune`.  Metrics: :func:`clean_accuracy`,
:func:`attack_success_rate`, :func:`robust_accuracy` (as in BackdoorBench).
"""

from jaxpurify.attacks._attack import Attack, Finetune
from jaxpurify.attacks._bitflip import Split, bit_trojan, choose_neurons, craft_trigger, pbfa
from jaxpurify.attacks._finetune import badnets
from jaxpurify.attacks._span import span_trojan
from jaxpurify.attacks._sparse import channel_trojan, sparse_trojan
from jaxpurify.attacks._trigger import Trigger, attack_success_rate, clean_accuracy, poison, robust_accuracy

__all__ = [
    "Attack",
    "Finetune",
    "Split",
    "Trigger",
    "attack_success_rate",
    "badnets",
    "bit_trojan",
    "channel_trojan",
    "choose_neurons",
    "clean_accuracy",
    "craft_trigger",
    "pbfa",
    "poison",
    "robust_accuracy",
    "sparse_trojan",
    "span_trojan",
]
