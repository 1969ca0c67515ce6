# Roost node firmware: the shared package (on a board at /lib/roost/).
# Board files (board.py, main.py) live at the filesystem root and pass the board module in;
# nothing in this package imports a board module.
VERSION = "1.0.0"
