"""Task families (one module each, named in families.FAMILIES): each turns a task config into data, a model
with the right head, and metrics. Also the data (data), answers, metrics and SQuAD's scoring."""
