"""`selectkit eval`: does the selection train a better model than random data of the same size?"""
