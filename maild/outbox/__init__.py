"""Outbound mail: compose at queue time, guard against loops, send with retries."""
