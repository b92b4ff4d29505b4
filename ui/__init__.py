"""Streamlit glue shared by app.py and pages/: session, login gate, navigation.

Only Streamlit-specific code lives here; anything with domain meaning belongs in core.
"""
