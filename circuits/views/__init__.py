"""Views of an attribution graph: the matplotlib drawing (draw.py), the self-contained HTML
page (html_page.py with static/), and feature labels and cards from an atlas (feature_labels.py).
"""
