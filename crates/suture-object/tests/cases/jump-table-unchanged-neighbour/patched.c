/* Opcode dispatcher of a tiny bytecode VM used for request filters. */
#include <stdint.h>

enum op {
    OP_NOP, OP_PUSH, OP_POP, OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_AND,
    OP_OR, OP_XOR, OP_NOT, OP_EQ, OP_LT, OP_JMP, OP_JZ, OP_HALT,
};

struct vm {
    int64_t stack[64];
    unsigned int sp;
    unsigned int pc;
    int halted;
};

int vm_step(struct vm *m, const uint8_t *code, unsigned int len)
{
    uint8_t op = code[m->pc++];
    int64_t a, b;

    switch (op) {
    case OP_NOP: break;
    case OP_PUSH: m->stack[m->sp++] = (int8_t)code[m->pc++]; break;
    case OP_POP: m->sp--; break;
    case OP_ADD: b = m->stack[--m->sp]; a = m->stack[--m->sp]; m->stack[m->sp++] = a + b; break;
    case OP_SUB: b = m->stack[--m->sp]; a = m->stack[--m->sp]; m->stack[m->sp++] = a - b; break;
    case OP_MUL: b = m->stack[--m->sp]; a = m->stack[--m->sp]; m->stack[m->sp++] = a * b; break;
    case OP_DIV: b = m->stack[--m->sp]; a = m->stack[--m->sp]; m->stack[m->sp++] = a / b; break;
    case OP_AND: b = m->stack[--m->sp]; a = m->stack[--m->sp]; m->stack[m->sp++] = a & b; break;
    case OP_OR: b = m->stack[--m->sp]; a = m->stack[--m->sp]; m->stack[m->sp++] = a | b; break;
    case OP_XOR: b = m->stack[--m->sp]; a = m->stack[--m->sp]; m->stack[m->sp++] = a ^ b; break;
    case OP_NOT: m->stack[m->sp - 1] = !m->stack[m->sp - 1]; break;
    case OP_EQ: b = m->stack[--m->sp]; a = m->stack[--m->sp]; m->stack[m->sp++] = a == b; break;
    case OP_LT: b = m->stack[--m->sp]; a = m->stack[--m->sp]; m->stack[m->sp++] = a < b; break;
    case OP_JMP: m->pc = code[m->pc]; break;
    case OP_JZ: a = m->stack[--m->sp]; m->pc = a ? m->pc + 1 : code[m->pc]; break;
    case OP_HALT: m->halted = 1; break;
    default: return -1;
    }
    return m->pc < len ? 0 : -1;
}

const char *vm_op_name(uint8_t op)
{
    switch (op) {
    case OP_NOP: return "nop";
    case OP_PUSH: return "push";
    case OP_POP: return "pop";
    case OP_ADD: return "add";
    case OP_SUB: return "sub";
    case OP_MUL: return "mul";
    case OP_DIV: return "div";
    case OP_AND: return "and";
    case OP_OR: return "or";
    case OP_XOR: return "xor";
    case OP_NOT: return "not";
    case OP_EQ: return "eq";
    case OP_LT: return "lt";
    case OP_JMP: return "jmp";
    case OP_JZ: return "jz";
    case OP_HALT: return "halt";
    default: return "?";
    }
}

int vm_validate(const uint8_t *code, unsigned int len)
{
    for (unsigned int i = 0; i < len; i++) {
        if (code[i] > OP_HALT)
            return -1;
        if (code[i] == OP_PUSH || code[i] == OP_JMP || code[i] == OP_JZ) {
            /* operand bytes past the end were read by vm_step; jump targets must stay inside */
            if (++i >= len)
                return -1;
            if (code[i - 1] != OP_PUSH && code[i] >= len)
                return -1;
        }
    }
    return 0;
}
