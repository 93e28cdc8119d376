"""The model layer: loading local HF models, the partitioned executor, subtask cost profiles."""
