"""Merging: the merge methods (methods/), the streaming merge of task vectors (stream), the hyperparameter search
on held-out training data (search) and `fusekit merge` (merge)."""
