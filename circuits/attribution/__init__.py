"""Attribution: trace a prompt through the replacement model into an `AttributionGraph`.

`attribute` (attribute.py) freezes the replacement model's nonlinearities (replacement_forward.py),
collects the active features and error nodes (sources.py, crosslayer_slices.py for cross-layer
transcoders) and computes the adjacency rows by the frozen linear map (linear_rows.py);
`intervene` (intervene.py) checks an attribution against the effect of clamping features.
"""
