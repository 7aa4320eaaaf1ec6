"""Generated modules for google.devtools (the Remote Workers API)."""
