"""Networks, activations, learners and interventions."""
from agents.activations import activations
from agents.agent import Agent, StepInfo
from agents.interventions import interventions
from agents.networks import MLP, NetworkSpec, networks
from agents import conv_net, resnet  # noqa: F401,E402 (register the conv networks)
from agents.interventions import cbp, l2, l2_init, redo, resets, shrink_perturb, spectral  # noqa: F401,E402 (register)

__all__ = ["Agent", "StepInfo", "MLP", "NetworkSpec", "activations", "interventions", "networks"]
