"""FPGA backend: an HLS C++ expert FFN over streamed bit-nested chunks, its integer reference path,
a C-simulation testbench and a Vitis HLS script."""
