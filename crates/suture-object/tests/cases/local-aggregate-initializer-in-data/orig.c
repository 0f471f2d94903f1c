/* A command-line parser with a local table of options (like memcached's main()): the table
 * holds addresses of strings, so gcc compiling PIE puts its initializer image into plain .data
 * as an unnamed constant and copies it onto the stack on every call. */
struct option {
    const char *name;
    int has_arg;
    int *flag;
    int val;
};

int parse_with(const struct option *opts, int argc, char **argv);

int parse(int argc, char **argv) {
    const struct option longopts[] = {
        {"option-1", 1, 0, 1},
        {"option-2", 0, 0, 2},
        {"option-3", 1, 0, 3},
        {"option-4", 0, 0, 4},
        {"option-5", 1, 0, 5},
        {"option-6", 0, 0, 6},
        {"option-7", 1, 0, 7},
        {"option-8", 0, 0, 8},
        {"option-9", 1, 0, 9},
        {"option-10", 0, 0, 10},
        {"option-11", 1, 0, 11},
        {"option-12", 0, 0, 12},
        {"option-13", 1, 0, 13},
        {"option-14", 0, 0, 14},
        {"option-15", 1, 0, 15},
        {"option-16", 0, 0, 16},
        {"option-17", 1, 0, 17},
        {"option-18", 0, 0, 18},
        {"option-19", 1, 0, 19},
        {"option-20", 0, 0, 20},
        {"option-21", 1, 0, 21},
        {"option-22", 0, 0, 22},
        {"option-23", 1, 0, 23},
        {"option-24", 0, 0, 24},
        {"option-25", 1, 0, 25},
        {"option-26", 0, 0, 26},
        {"option-27", 1, 0, 27},
        {"option-28", 0, 0, 28},
        {"option-29", 1, 0, 29},
        {"option-30", 0, 0, 30},
        {"option-31", 1, 0, 31},
        {"option-32", 0, 0, 32},
        {"option-33", 1, 0, 33},
        {"option-34", 0, 0, 34},
        {"option-35", 1, 0, 35},
        {"option-36", 0, 0, 36},
        {"option-37", 1, 0, 37},
        {"option-38", 0, 0, 38},
        {"option-39", 1, 0, 39},
        {"option-40", 0, 0, 40},
        {0, 0, 0, 0},
    };
    if (argc < 1)
        return -1;
    return parse_with(longopts, argc, argv);
}

int other(int x) { return x * 3; }
