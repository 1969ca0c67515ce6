# Runs before main.py. Nothing to prepare on the Pico W: the roost package lives in /lib.
