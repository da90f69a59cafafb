"""Avalanche both ways: lab streams as Avalanche benchmarks, Avalanche
strategies as lab agents, the lab's metrics and interventions as Avalanche
plugins. Importing avalanche takes seconds, so only these modules do it."""
