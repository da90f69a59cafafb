"""Networks, activations, learners and interventions."""
from plasticity_lab.agents.activations import activations
from plasticity_lab.agents.agent import Agent, StepInfo
from plasticity_lab.agents.interventions import interventions
from plasticity_lab.agents.networks import MLP, NetworkSpec, networks
from plasticity_lab.agents import conv_net, resnet  # noqa: F401,E402 (register the conv networks)
from plasticity_lab.agents.interventions import cbp, l2, l2_init, redo, resets, shrink_perturb, spectral  # noqa: F401,E402 (register)

__all__ = ["Agent", "StepInfo", "MLP", "NetworkSpec", "activations", "interventions", "networks"]
