# Shared helpers of the hivetrack Windows VM kit. Dot-source it: . "$PSScriptRoot\common.ps1"
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$Kit = $PSScriptRoot
$Package = if ($env:HIVETRACK_PACKAGE) { $env:HIVETRACK_PACKAGE } else { Join-Path $Kit 'package' }
$Results = Join-Path $Kit 'results'
$State = Join-Path $Kit 'state.json'
$Exe = Join-Path $Package 'hivetrack.exe'
$Inf = Join-Path $Package 'hivetrack.inf'
New-Item -ItemType Directory -Force -Path $Results | Out-Null

function Assert-Admin {
    $id = [Security.Principal.WindowsIdentity]::GetCurrent()
    $p = New-Object Security.Principal.WindowsPrincipal($id)
    if (-not $p.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw 'Run this from an elevated PowerShell (Administrator).'
    }
}

function Get-KitState {
    if (Test-Path $State) { return Get-Content $State -Raw | ConvertFrom-Json }
    return [pscustomobject]@{ step = 'start' }
}

function Set-KitState([string]$Step) {
    [pscustomobject]@{ step = $Step; at = (Get-Date).ToString('o') } | ConvertTo-Json | Set-Content $State
}

function Write-Result([string]$Name, [bool]$Ok, [string]$Detail) {
    $line = '{0} {1}: {2}' -f ($(if ($Ok) { 'PASS' } else { 'FAIL' })), $Name, $Detail
    Write-Host $line
    Add-Content -Path (Join-Path $Results 'summary.txt') -Value $line
    if (-not $Ok) { $script:Failures++ }
}

function Invoke-Hivetrack([string[]]$Arguments) {
    $out = & $Exe @Arguments 2>&1
    return [pscustomobject]@{ Code = $LASTEXITCODE; Text = ($out -join "`n") }
}
