"""Generated modules for google.longrunning: Operation and the Operations service."""
