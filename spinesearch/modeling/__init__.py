"""Keras models from architectures (through TF Model Garden) and their cost.

Importing `spinesearch.modeling.garden` registers the 'spinesearch' backbone,
decoder, task and experiment with Model Garden's factories.
"""
from spinesearch.modeling.builder import (build_backbone, build_decoder,
                                          build_retinanet, complete_build)
from spinesearch.modeling.cost import (count_multiply_adds, count_params,
                                       measure_latency_ms)
