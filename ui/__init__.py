"""Streamlit helpers shared by the dashboard pages (``core`` stays free of Streamlit)."""
