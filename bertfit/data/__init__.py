"""The data layer: reading files (readers), finding splits (sources), what the columns mean (schema), tag schemes
(tags). It knows nothing of models or training."""
