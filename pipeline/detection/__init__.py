"""Detection: reads a slide's tile grid and a model; produces one tumor probability per
tile and the heatmap. ``inference`` (one prepared model per slide, readers,
precision), ``cpu_plan`` (readers vs torch threads), ``cascade`` (the screen, on by default),
``heatmap`` (probabilities on the grid, saved and reloaded exactly).
"""
