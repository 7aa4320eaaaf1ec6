"""Generated modules for google.devtools.remoteworkers."""
