"""Networks, activations, learners and interventions."""
from agents.activations import activations
from agents.agent import Agent, StepInfo
from agents.interventions import interventions
from agents.networks import MLP

__all__ = ["Agent", "StepInfo", "MLP", "activations", "interventions"]
