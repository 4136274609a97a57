/* The per-word loop of preprocessing in C: words as str.split() finds them, their hashes, the Gopher n-gram
 * statistics, and MinHash signatures. words.py holds the numpy twin of every function here; the tests check
 * that both give the same values, bit for bit. All arithmetic is on uint64, modulo 2^64.
 *
 * Word hash: each code point c at position j of a word becomes v_j = mix(j << 21 | c) (code points are below
 * 2^21); h = sum_j v_j * Q^j; the hash is mix(h + k * LEN_MIX) for a word of k code points, with the SplitMix64
 * finalizer `mix`. Mixing each code point with its position first keeps a polynomial modulo 2^64 from colliding
 * on Thue-Morse words. The numpy twin computes the same sum from prefix sums.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define Q 0x9E3779B97F4A7C15ULL
#define LEN_MIX 0xD6E8FEB86659FD93ULL
#define PRIME 1099511628211ULL /* extends an n-gram hash by one word, as ngrams.PRIME */
#define WORD_HASH "position-mixed code-point polynomial, SplitMix64 (2026-12)" /* as words.WORD_HASH */

static uint64_t mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 31;
    return x;
}

static Py_ssize_t count_words(PyObject *text) {
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t size = PyUnicode_GET_LENGTH(text), count = 0;
    int in_word = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        int space = Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i));
        count += !space && !in_word;
        in_word = !space;
    }
    return count;
}

/* Split text at Unicode spaces (Py_UNICODE_ISSPACE, what str.split() uses); fill hashes and, unless NULL,
 * lengths (code points), each of capacity count_words(text). Returns the number of words. */
static Py_ssize_t split_hash(PyObject *text, uint64_t *hashes, int64_t *lengths) {
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t size = PyUnicode_GET_LENGTH(text), count = 0, i = 0;
    while (i < size) {
        while (i < size && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i))) i++;
        if (i >= size) break;
        uint64_t sum = 0, power = 1;
        Py_ssize_t start = i;
        while (i < size) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (Py_UNICODE_ISSPACE(c)) break;
            sum += mix((uint64_t)(i - start) << 21 | c) * power;
            power *= Q;
            i++;
        }
        uint64_t length = (uint64_t)(i - start);
        hashes[count] = mix(sum + length * LEN_MIX);
        if (lengths) lengths[count] = (int64_t)length;
        count++;
    }
    return count;
}

/* words(text) -> (hashes: bytes of uint64, lengths: bytes of int64) */
static PyObject *words(PyObject *self, PyObject *args) {
    PyObject *text;
    if (!PyArg_ParseTuple(args, "U", &text)) return NULL;
    Py_ssize_t cap = count_words(text) + 1;
    uint64_t *hashes = PyMem_Malloc(cap * sizeof(uint64_t));
    int64_t *lengths = PyMem_Malloc(cap * sizeof(int64_t));
    if (!hashes || !lengths) {
        PyMem_Free(hashes);
        PyMem_Free(lengths);
        return PyErr_NoMemory();
    }
    Py_ssize_t count = split_hash(text, hashes, lengths);
    PyObject *result = Py_BuildValue("(y#y#)", (const char *)hashes, count * (Py_ssize_t)sizeof(uint64_t),
                                     (const char *)lengths, count * (Py_ssize_t)sizeof(int64_t));
    PyMem_Free(hashes);
    PyMem_Free(lengths);
    return result;
}

/* Set per process when the module loads (address layout and time): where an n-gram lands in the table, never
 * what the functions return, so crafted text cannot make the table quadratic. */
static uint64_t slot_seed;

/* A table of the distinct n-grams of a text (open addressing): how often each occurs and where first. */
typedef struct {
    uint64_t *keys;
    int64_t *counts; /* 0: empty slot */
    int64_t *first;
    size_t mask;
} Grams;

static int grams_init(Grams *table, Py_ssize_t count) {
    size_t size = 16;
    while (size < 2 * (size_t)count) size <<= 1;
    table->mask = size - 1;
    table->keys = PyMem_Malloc(size * sizeof(uint64_t));
    table->counts = PyMem_Calloc(size, sizeof(int64_t));
    table->first = PyMem_Malloc(size * sizeof(int64_t));
    return table->keys && table->counts && table->first ? 0 : -1;
}

static void grams_free(Grams *table) {
    PyMem_Free(table->keys);
    PyMem_Free(table->counts);
    PyMem_Free(table->first);
}

/* Count one occurrence of gram at position; returns its count so far (1 for its first occurrence). */
static int64_t grams_add(Grams *table, uint64_t gram, Py_ssize_t position) {
    size_t slot = (size_t)mix(gram ^ slot_seed) & table->mask; /* seeded: crafted grams cannot pile up */
    while (table->counts[slot] && table->keys[slot] != gram) slot = (slot + 1) & table->mask;
    if (!table->counts[slot]) {
        table->keys[slot] = gram;
        table->first[slot] = position;
    }
    return ++table->counts[slot];
}

/* The hash of the n-gram at position i (words i .. i+n-1), as ngrams.ngram_hashes computes it. */
static uint64_t gram_at(const uint64_t *hashes, Py_ssize_t i, Py_ssize_t n) {
    uint64_t gram = hashes[i];
    for (Py_ssize_t k = 1; k < n; k++) gram = gram * PRIME ^ hashes[i + k];
    return gram;
}

static int parse_words(PyObject *args, Py_buffer *hashes, Py_buffer *lengths, Py_ssize_t *n) {
    if (!PyArg_ParseTuple(args, "y*y*n", hashes, lengths, n)) return -1;
    if (hashes->len % 8 || lengths->len != hashes->len || *n < 1) {
        PyBuffer_Release(hashes);
        PyBuffer_Release(lengths);
        PyErr_SetString(PyExc_ValueError, "hashes and lengths must be equally long arrays of 8-byte values, n >= 1");
        return -1;
    }
    return 0;
}

/* Most frequent n-gram: characters in all its occurrences; of several equally frequent, the one that occurs first
 * (filters.Features.top_ngram_chars). Returns -1 when out of memory. */
static int top_chars(const uint64_t *hashes, const int64_t *lengths, Py_ssize_t words, Py_ssize_t n, long long *chars) {
    Py_ssize_t count = words - n + 1;
    if (count <= 0) return 0;
    Grams table = {0};
    if (grams_init(&table, count) < 0) {
        grams_free(&table);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) grams_add(&table, gram_at(hashes, i, n), i);
    int64_t best = 0, top = 0;
    for (size_t slot = 0; slot <= table.mask; slot++) {
        int64_t seen = table.counts[slot];
        if (seen > best || (seen == best && seen && table.first[slot] < top)) {
            best = seen;
            top = table.first[slot];
        }
    }
    if (best == 1) top = 0;
    for (Py_ssize_t k = 0; k < n; k++) *chars += lengths[top + k];
    *chars *= best;
    grams_free(&table);
    return 0;
}

/* Characters of the words covered by any repeated occurrence (every occurrence but the first) of an n-gram
 * (filters.Features.duplicated_ngram_chars). Returns -1 when out of memory. */
static int duplicated_chars(const uint64_t *hashes, const int64_t *lengths, Py_ssize_t words, Py_ssize_t n,
                            long long *chars) {
    Py_ssize_t count = words - n + 1;
    if (count < 2) return 0;
    Grams table = {0};
    int64_t *depth = PyMem_Calloc(words + 1, sizeof(int64_t));
    if (!depth || grams_init(&table, count) < 0) {
        grams_free(&table);
        PyMem_Free(depth);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (grams_add(&table, gram_at(hashes, i, n), i) == 1) continue;
        depth[i]++; /* a repeated occurrence covers words i .. i+n-1 */
        depth[i + n]--;
    }
    int64_t covered = 0;
    for (Py_ssize_t w = 0; w < words; w++) {
        covered += depth[w];
        if (covered > 0) *chars += lengths[w];
    }
    grams_free(&table);
    PyMem_Free(depth);
    return 0;
}

typedef int (*NgramStatistic)(const uint64_t *, const int64_t *, Py_ssize_t, Py_ssize_t, long long *);

/* (hashes, lengths, n) from Python, the statistic computed, the buffers released. */
static PyObject *ngram_statistic(PyObject *args, NgramStatistic statistic) {
    Py_buffer hb, lb;
    Py_ssize_t n;
    if (parse_words(args, &hb, &lb, &n) < 0) return NULL;
    long long chars = 0;
    int failed = statistic(hb.buf, lb.buf, hb.len / 8, n, &chars);
    PyBuffer_Release(&hb);
    PyBuffer_Release(&lb);
    return failed ? PyErr_NoMemory() : PyLong_FromLongLong(chars);
}

/* top_ngram_chars(hashes, lengths, n) */
static PyObject *top_ngram_chars(PyObject *self, PyObject *args) { return ngram_statistic(args, top_chars); }

/* duplicated_ngram_chars(hashes, lengths, n) */
static PyObject *duplicated_ngram_chars(PyObject *self, PyObject *args) {
    return ngram_statistic(args, duplicated_chars);
}

/* minima[j] = min(minima[j], a[j] * shingle + b[j]): the hot loop of MinHash. With GCC 12 or newer on x86-64 it
 * is also compiled for AVX2 and AVX-512 (64-bit multiply and unsigned minimum in one instruction each), chosen at
 * load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 /* older: no dispatcher */
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void permute_min(const uint64_t *a, const uint64_t *b, uint64_t *minima, Py_ssize_t perms, uint64_t shingle) {
    for (Py_ssize_t j = 0; j < perms; j++) {
        uint64_t value = a[j] * shingle + b[j];
        minima[j] = value < minima[j] ? value : minima[j];
    }
}

/* signature(text, ngram, a, b) -> bytes of uint64: for each permutation j, the minimum over the text's shingles s
 * of (a_j * s + b_j), shifted right by 32; a shingle of `ngram` words is sum_k h[i+k] * MIX^k (dedup.MinHasher).
 * A text without words gives 2^32 - 1 everywhere. */
static PyObject *signature(PyObject *self, PyObject *args) {
    PyObject *text;
    Py_ssize_t ngram;
    Py_buffer ab, bb, pb;
    if (!PyArg_ParseTuple(args, "Uny*y*y*", &text, &ngram, &ab, &bb, &pb)) return NULL;
    Py_ssize_t perms = ab.len / 8, cap = count_words(text) + 1;
    const uint64_t *a = ab.buf, *b = bb.buf, *powers = pb.buf;
    uint64_t *hashes = PyMem_Malloc(cap * sizeof(uint64_t));
    uint64_t *minima = PyMem_Malloc((perms ? perms : 1) * sizeof(uint64_t));
    PyObject *result = NULL;
    if (bb.len != ab.len || ab.len % 8 || ngram < 1 || ngram > pb.len / 8) {
        PyErr_SetString(PyExc_ValueError, "a and b must be equal arrays of uint64, powers at least ngram long");
        goto done;
    }
    if (!hashes || !minima) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t count = split_hash(text, hashes, NULL);
    for (Py_ssize_t j = 0; j < perms; j++) minima[j] = UINT64_MAX;
    Py_ssize_t n = count < ngram ? count : ngram;
    for (Py_ssize_t i = 0; n && i + n <= count; i++) {
        uint64_t shingle = 0;
        for (Py_ssize_t k = 0; k < n; k++) shingle += hashes[i + k] * powers[k];
        permute_min(a, b, minima, perms, shingle);
    }
    for (Py_ssize_t j = 0; j < perms; j++) minima[j] >>= 32;
    result = PyBytes_FromStringAndSize((const char *)minima, perms * (Py_ssize_t)sizeof(uint64_t));
done:
    PyMem_Free(hashes);
    PyMem_Free(minima);
    PyBuffer_Release(&ab);
    PyBuffer_Release(&bb);
    PyBuffer_Release(&pb);
    return result;
}

static PyMethodDef methods[] = {
    {"words", words, METH_VARARGS, "words(text) -> (hashes, lengths): str.split()'s words, hashed; bytes of uint64/int64"},
    {"top_ngram_chars", top_ngram_chars, METH_VARARGS, "Characters in all occurrences of the most frequent n-gram"},
    {"duplicated_ngram_chars", duplicated_ngram_chars, METH_VARARGS, "Characters covered by repeated n-grams"},
    {"signature", signature, METH_VARARGS, "MinHash signature of a text's word shingles; bytes of uint64"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_words", "The per-word loop of preprocessing.", -1, methods};

PyMODINIT_FUNC PyInit__words(void) {
    slot_seed = mix((uint64_t)(uintptr_t)&slot_seed ^ (uint64_t)time(NULL) << 20 ^ (uint64_t)clock());
    PyObject *created = PyModule_Create(&module);
    /* words.py uses this module only when the names agree: a stale build of an older hash is never used */
    if (created && PyModule_AddStringConstant(created, "WORD_HASH", WORD_HASH) < 0) {
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
