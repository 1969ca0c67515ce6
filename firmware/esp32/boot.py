# Runs before main.py: keep the ESP-IDF's own log lines off the console the test rig parses.
try:
    import esp

    esp.osdebug(None)
except ImportError:
    pass
