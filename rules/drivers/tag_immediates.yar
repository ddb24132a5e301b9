/*
 * pooltagscan's tag-carrying instruction patterns (rules tagged tag_immediate).
 *
 * They are run only over the code just before a pool API call whose tag the data-flow
 * analysis could not recover, and each match is decoded again: a match counts when the
 * instruction holding its last byte is a mov or push with a 4-byte immediate made of
 * printable ASCII, which is how drivers write tags ('gaTm'). Such a tag is reported
 * with low confidence ("tag-like immediate near an allocation").
 *
 * Encodings (Intel SDM, MOV and PUSH), x86 and x64 alike:
 *   B8+r id          mov r32, imm32 (x64: a REX.B prefix selects r8d-r15d)
 *   C7 /0 id         mov r/m32, imm32, with ModRM choosing [reg], [reg+disp8],
 *                    [reg+disp32], [esp/rsp + disp] (SIB 24) or [rip+disp32]/[disp32]
 *   68 id            push imm32
 * User rule files can add patterns the same way: tag the rule tag_immediate and make
 * the string end with the immediate.
 */

rule mov_register_imm32 : tag_immediate
{
    meta:
        description = "mov r32, imm32 with a printable immediate"
    strings:
        $mov = /[\xB8-\xBF][\x20-\x7E]{4}/
    condition:
        $mov
}

rule mov_stack_imm32 : tag_immediate
{
    meta:
        description = "mov dword [esp/rsp + disp], imm32 (a stack argument or local)"
    strings:
        $disp8 = /\xC7\x44\x24[\x00-\xFF][\x20-\x7E]{4}/
        $disp32 = /\xC7\x84\x24[\x00-\xFF]{4}[\x20-\x7E]{4}/
    condition:
        any of them
}

rule mov_memory_imm32 : tag_immediate
{
    meta:
        description = "mov dword [reg], [reg + disp] or [global], imm32 (a structure field or variable)"
    strings:
        $base = /\xC7[\x00-\x03\x06\x07][\x20-\x7E]{4}/
        $disp8 = /\xC7[\x40-\x43\x45-\x47][\x00-\xFF][\x20-\x7E]{4}/
        $disp32 = /\xC7[\x80-\x83\x85-\x87][\x00-\xFF]{4}[\x20-\x7E]{4}/
        $global = /\xC7\x05[\x00-\xFF]{4}[\x20-\x7E]{4}/
    condition:
        any of them
}

rule push_imm32 : tag_immediate
{
    meta:
        description = "push imm32 (x86 stack argument)"
    strings:
        $push = /\x68[\x20-\x7E]{4}/
    condition:
        $push
}
