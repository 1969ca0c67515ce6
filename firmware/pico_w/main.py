# Board entry point: everything but the pins lives in the shared roost package (/lib/roost).
import board
from roost import node

node.run(board)
